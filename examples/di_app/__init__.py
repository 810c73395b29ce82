"""An app built with dependency-injector: its own container holds a mailer and taskflow.

Run it: ``uvicorn di_app.app:create_app --factory --app-dir examples`` (from the repository root).
"""
