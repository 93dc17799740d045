"""Runs one example of examples/python as a test: skips (77) naming the missing Debian
package when one of the example's modules is absent, else runs it; its exit status and its
own assertions decide."""
import importlib.util
import os
import runpy
import sys

# module -> the Debian package (scripts/packages.txt) that brings it
NEEDS = {"fitz": "python3-fitz", "numpy": "python3-numpy", "xgboost": "python3-xgboost",
         "sklearn": "python3-sklearn", "fastapi": "python3-fastapi",
         "uvicorn": "python3-uvicorn", "httpx": "python3-httpx"}

script = sys.argv[1]
modules = sys.argv[2:]
missing = [NEEDS.get(m, m) for m in modules if importlib.util.find_spec(m) is None]
if missing:
    print(f"SKIP: {os.path.basename(script)} needs {' '.join(missing)} "
          f"(apt-get install {' '.join(missing)})")
    sys.exit(77)
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
