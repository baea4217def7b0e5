from dynhp_bench.cli import main

main()
