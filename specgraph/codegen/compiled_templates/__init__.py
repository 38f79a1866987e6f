"""The templates as jinja2 compiles them, one module each (see ``codegen/template_loader.py``).

Regenerate after editing a template: ``python -m specgraph.codegen.compiled_templates``.
"""
