from junodcs.cli.main import main

main()
