"""`caffelike serve`: a DIGITS-like web application over caffelike's datasets, trainings and reports.

app.py builds the Flask application (guards, errors, the job routes); jobs.py keeps jobs on disk; scheduler.py
runs them as subprocesses; dataset_views.py, model_views.py and model_pages.py hold the pages and DIGITS' REST
routes for datasets, new models, and a model's live and trained pages.
"""
