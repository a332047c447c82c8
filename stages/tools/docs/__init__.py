"""`make docs`: the figures of README.md and docs/ rendered from committed CSVs into marked blocks.

A block is `<!-- BEGIN generated:NAME [ARG] -->` ... `<!-- END generated:NAME -->`; NAME picks a renderer in
`tables.RENDERERS`, which reads only committed files under reports/measured/ and reports/baselines/.
`python -m stages.tools.docs` rewrites every block; `--check` lists the blocks that differ and exits 1.
"""
