"""``python -m specgraph.codegen.compiled_templates``: rewrite every template's module."""

from specgraph.codegen.template_loader import write_compiled

for path in write_compiled():
    print(f"wrote {path}")
