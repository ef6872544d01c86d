"""What a shared server needs besides a UI: the training slot and run-folder housekeeping."""
