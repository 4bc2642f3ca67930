"""Training of split classifiers with obfuscation defenses and the CEM regulariser."""
