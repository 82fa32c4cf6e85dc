"""``python -m reproduce <command>``: regenerate the paper's tables and the package's measurements."""
