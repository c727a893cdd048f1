"""What `harness submit` writes into a promoted bundle beside the harness source and the weights.

`api.py` is copied as it is (it is the bundle's test API); `templates` holds the Dockerfile, the
entry point, train.sh and the model card as format strings. Both are Python modules so that they
install with the package (setuptools ships .py files only unless told otherwise).
"""
