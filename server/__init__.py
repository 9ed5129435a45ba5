"""The local sampling server (FastAPI). Imports torch only through zs_core."""
