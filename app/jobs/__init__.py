"""Background work (SPEC B17): a job table in the application's database, its worker and its handlers."""
