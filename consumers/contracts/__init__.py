"""Generated files: JSON Schemas, AsyncAPI, OpenAPI, the settings page."""
