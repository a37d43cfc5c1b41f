"""layergc's Alembic environment, shipped as the package `layergc.migrations`.

Configured in code by `layergc.gc.db.alembic_config`; there is no alembic.ini.
"""
