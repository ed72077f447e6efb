from repobuild.cli import main

main()
