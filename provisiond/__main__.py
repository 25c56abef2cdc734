from provisiond.cli import main

main()
