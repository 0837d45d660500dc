"""What a run says: the report (table, JSON, Markdown), JUnit XML, plots."""
