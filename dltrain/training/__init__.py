"""The run: fit (engine.py), one epoch (epoch.py), what a run is made of (session.py), its
checkpoints (saving.py, checkpoint.py), resume, early stopping, runtime and distributed."""
