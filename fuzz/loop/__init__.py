"""The fuzz loop: campaigns, the budget, worker processes, jobs, shrinking, failure identity."""
