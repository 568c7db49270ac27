"""The management REST API under ``/api/``: DRF viewsets over the portal's services."""
