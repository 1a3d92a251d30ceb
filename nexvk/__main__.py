from nexvk.cli import main

main()
