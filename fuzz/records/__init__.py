"""What a run keeps: its directory and journal, case files, statistics, progress."""
