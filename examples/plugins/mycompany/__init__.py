"""An example plugin package (docs/PLUGINS.md): `module: "mycompany.audit:AuditFilter"`."""
