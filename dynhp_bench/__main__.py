from dynhp_bench.cli.commands import main

main()
