"""Readers and writers of external file formats (I/O lives here, never in planner/)."""
