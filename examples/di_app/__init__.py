"""The example ``make run`` serves: a sign-up service wired with dependency-injector.

* ``config/taskflow.yaml``: every taskflow setting (SQLite under ``var/``, the dashboard at
  ``/tasks``), ``TASKFLOW_*`` environment variables on top;
* ``containers.py``: the app's container, its own services beside an embedded
  ``TaskflowContainer``;
* ``tasks.py``: the tasks, declared on a registry before any container exists; the email task
  receives the mailer from the container;
* ``routes.py``: routes that take ``TasksDep`` and a task handle;
* ``app.py``: ``create_app()``, the factory uvicorn calls.

Run it: ``make run``, or ``uvicorn examples.di_app.app:create_app --factory`` from the repository
root. Its tests (with provider overrides): ``tests/integration/test_di_app.py``.
"""
