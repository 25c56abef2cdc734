"""What each console page shows: one module per page, each a fixed number of queries."""
