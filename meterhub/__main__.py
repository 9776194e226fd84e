from meterhub.cli import main

main()
