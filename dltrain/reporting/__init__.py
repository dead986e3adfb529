"""What a run leaves and tells: its folder (runs.py, listing.py), pictures (plots.py,
pictures.py), the typed events (events.py) and the trackers that listen to them."""
