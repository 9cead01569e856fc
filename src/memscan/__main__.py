from memscan.cli import main

main()
