"""Repository-level pytest settings: the notebooks' paired .py files and the scripts are not test
modules (the notebooks run as .ipynb through nbmake)."""

collect_ignore_glob = ["notebooks/*.py", "benchmarks/*", "scripts/*"]
