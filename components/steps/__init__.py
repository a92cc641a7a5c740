"""The DAG steps, one module per step, each named as the DAG names it.

Every module here holds one function declared with `@contract.step(...)`; the
helpers the steps share live one level up, in `components/`. A step never imports
another step or anything of `pipeline/`.
"""
