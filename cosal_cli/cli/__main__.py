from cosal_cli.cli import main

main()
