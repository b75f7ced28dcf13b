"""nbqueue's dashboard: the JupyterLab side panel and `nbqueue dashboard` (placeholder)."""
