"""Each command's real work apart from training itself: eval, predict, export, lr-find, compare,
sweep and show."""
