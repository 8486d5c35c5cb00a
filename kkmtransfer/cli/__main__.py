"""python -m kkmtransfer.cli"""
from . import main

main()
