"""cocotb testbenches and runners (Icarus, Verilator) for the generated Verilog."""
