from loopline_cli.app import main

main()
