"""How model names are spelt: what the facts table (facts.py) and the catalog that writes its
zoo.json (catalog.py) both need, so that neither imports the other for it."""

TIMM = "timm/"  # timm's models are named timm/<name>: no clash with torchvision's names
COURSE_NAMES = ("mlp", "cnn", "alexnet", "resnet18")  # facts.COURSE has a row for each
