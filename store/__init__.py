"""Persistence: the SQLAlchemy models, sessions, migrations runner and the repositories the layers above use."""
