"""A minimal Django + DRF app over the scheduler's tables: the issue's reference lease view."""
