from dltrain.cli import main

main()
