// Simulation models of the ECP5 primitives that Yosys's share/ecp5/cells_sim.v has no model of
// (DP16KD is a blackbox there; MULT18X18D and PDPW16KD are only in cells_bb.v), written from
// Lattice TN1264 (ECP5 Memory Usage Guide) and TN1267 (ECP5 sysDSP Usage Guide) for the
// configurations synth_ecp5 emits. Used by sim/netlist.py after the netlist and Yosys's models;
// tested by tests/test_netlist.py. Unsupported configurations stop the simulation with $fatal
// instead of simulating something else.
//
// DP16KD: 18 Kbit true dual-port block RAM. Per port (A, B):
// - DATA_WIDTH 1, 2, 4, 9, 18, or 36 (x36: pseudo dual-port, port A writes {DIB, DIA}, port B
//   reads {DOB, DOA}; this is how nextpnr and Yosys express PDPW16KD).
// - Address bits: x1 AD[13:0], x2 AD[13:1], x4 AD[13:2], x9 AD[13:3], x18 AD[13:4], x36 AD[13:5].
//   In x18 mode AD[1:0] are the write enables of the two 9-bit bytes, in x36 mode AD[3:0] those
//   of the four bytes.
// - Layout: the array is 2048 bytes of 9 bits; a 9/18/36-bit word is 1/2/4 consecutive bytes,
//   low byte in the low bits. A 1/2/4-bit port sees only the 8 low bits of each byte (16 Kbit):
//   its word w occupies data bits w*W .. w*W+W-1 counted over the bytes' 8 low bits.
// - A clock edge with CE high and the chip select CS[2:0] equal to CSDECODE writes (WE high)
//   and/or reads; the read data goes to DO (REGMODE "NOREG") or through one more register
//   clocked with OCE (REGMODE "OUTREG"). WRITEMODE: "NORMAL" keeps DO during a write,
//   "WRITETHROUGH" shows the new word, "READBEFOREWRITE" the old one. A read of a word that the
//   other port writes at the same edge returns the old word. RST resets DO (and the output
//   register) to 0, synchronously or asynchronously (RESETMODE).
// - Contents start at INITVAL_00..3F (row r holds bytes 32r .. 32r+31; each 320-bit row is 16
//   slots of 20 bits, a slot two 9-bit bytes, low byte first, and 2 unused bits: Yosys's layout),
//   outputs at 0; with `LCQ_X_INIT` defined, both start at X.
// MULT18X18D: 18 x 18 -> 36 multiplier: P = A * B, each operand signed when SIGNEDA/SIGNEDB;
// combinational (every REG_* "NONE", as Yosys's dsp_map instantiates it), or with the input registers
// (REG_INPUTA_CLK, REG_INPUTB_CLK) and/or the output register (REG_OUTPUT_CLK) on CLK0, enabled by CE0
// and reset to 0 by RST0 at the clock edge (RESETMODE "SYNC"), as hw/dsp.py instantiates it; the registers
// start at 0 (at X with `LCQ_X_INIT` defined).

`timescale 1ps / 1ps

module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA";
  parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED";
  parameter INIT_DATA = "STATIC";
  parameter WID = 0;
  parameter [319:0] INITVAL_00 = 0, INITVAL_01 = 0, INITVAL_02 = 0, INITVAL_03 = 0, INITVAL_04 = 0, INITVAL_05 = 0,
                    INITVAL_06 = 0, INITVAL_07 = 0, INITVAL_08 = 0, INITVAL_09 = 0, INITVAL_0A = 0, INITVAL_0B = 0,
                    INITVAL_0C = 0, INITVAL_0D = 0, INITVAL_0E = 0, INITVAL_0F = 0, INITVAL_10 = 0, INITVAL_11 = 0,
                    INITVAL_12 = 0, INITVAL_13 = 0, INITVAL_14 = 0, INITVAL_15 = 0, INITVAL_16 = 0, INITVAL_17 = 0,
                    INITVAL_18 = 0, INITVAL_19 = 0, INITVAL_1A = 0, INITVAL_1B = 0, INITVAL_1C = 0, INITVAL_1D = 0,
                    INITVAL_1E = 0, INITVAL_1F = 0, INITVAL_20 = 0, INITVAL_21 = 0, INITVAL_22 = 0, INITVAL_23 = 0,
                    INITVAL_24 = 0, INITVAL_25 = 0, INITVAL_26 = 0, INITVAL_27 = 0, INITVAL_28 = 0, INITVAL_29 = 0,
                    INITVAL_2A = 0, INITVAL_2B = 0, INITVAL_2C = 0, INITVAL_2D = 0, INITVAL_2E = 0, INITVAL_2F = 0,
                    INITVAL_30 = 0, INITVAL_31 = 0, INITVAL_32 = 0, INITVAL_33 = 0, INITVAL_34 = 0, INITVAL_35 = 0,
                    INITVAL_36 = 0, INITVAL_37 = 0, INITVAL_38 = 0, INITVAL_39 = 0, INITVAL_3A = 0, INITVAL_3B = 0,
                    INITVAL_3C = 0, INITVAL_3D = 0, INITVAL_3E = 0, INITVAL_3F = 0;

  // 2048 bytes of 9 bits. Writes are non-blocking: a read at the same edge, by either port, sees the
  // array before the edge's writes whatever order the two ports' processes run in.
  reg [8:0] mem [0:2047];

  wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
  wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
  wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
  wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
  wire clka = CLKAMUX == "INV" ? ~CLKA : CLKA;
  wire clkb = CLKBMUX == "INV" ? ~CLKB : CLKB;
  // CSDECODE "0bXYZ": X for CS2, Z for CS0; the characters '0' and '1' differ in bit 0.
  wire [39:0] csdecode_a = CSDECODE_A, csdecode_b = CSDECODE_B;
  wire sela = {CSA2, CSA1, CSA0} == {csdecode_a[16], csdecode_a[8], csdecode_a[0]};
  wire selb = {CSB2, CSB1, CSB0} == {csdecode_b[16], csdecode_b[8], csdecode_b[0]};
  // x36: port A writes {DIB, DIA}.
  wire [35:0] write_a = DATA_WIDTH_A == 36 ? {dib, dia} : {18'b0, dia};
  wire [35:0] write_b = {18'b0, dib};

  // The word at address `ad` of a port `width` bits wide (module-scope array read).
  function [35:0] read_word(input integer width, input [13:0] ad);
    integer d;
    reg [8:0] byte_;
    begin
      read_word = 36'b0;
      case (width)
        36: read_word = {mem[{ad[13:5], 2'd3}], mem[{ad[13:5], 2'd2}], mem[{ad[13:5], 2'd1}], mem[{ad[13:5], 2'd0}]};
        18: read_word = {18'b0, mem[{ad[13:4], 1'b1}], mem[{ad[13:4], 1'b0}]};
        9: read_word = {27'b0, mem[ad[13:3]]};
        default: begin          // 1, 2, 4: data bits d .. d+width-1 of the bytes' 8 low bits
          d = width == 4 ? {ad[13:2], 2'b0} : width == 2 ? {ad[13:1], 1'b0} : ad;
          byte_ = mem[d / 8];
          read_word = width == 4 ? byte_[d % 8 +: 4] : width == 2 ? byte_[d % 8 +: 2] : byte_[d % 8];
        end
      endcase
    end
  endfunction

  // `old` with the bytes (x18: AD[1:0], x36: AD[3:0]) or bits a write of `data` changes.
  function [35:0] merge(input integer width, input [13:0] ad, input [35:0] old, input [35:0] data);
    integer k;
    begin
      merge = data;
      if (width == 18 || width == 36)
        for (k = 0; k < width / 9; k = k + 1)
          if (!ad[k]) merge[9 * k +: 9] = old[9 * k +: 9];
    end
  endfunction

  task write_word(input integer width, input [13:0] ad, input [35:0] data);
    integer d;
    reg [8:0] byte_;
    begin
      case (width)
        36: begin
          if (ad[0]) mem[{ad[13:5], 2'd0}] <= data[8:0];
          if (ad[1]) mem[{ad[13:5], 2'd1}] <= data[17:9];
          if (ad[2]) mem[{ad[13:5], 2'd2}] <= data[26:18];
          if (ad[3]) mem[{ad[13:5], 2'd3}] <= data[35:27];
        end
        18: begin
          if (ad[0]) mem[{ad[13:4], 1'b0}] <= data[8:0];
          if (ad[1]) mem[{ad[13:4], 1'b1}] <= data[17:9];
        end
        9: mem[ad[13:3]] <= data[8:0];
        default: begin
          d = width == 4 ? {ad[13:2], 2'b0} : width == 2 ? {ad[13:1], 1'b0} : ad;
          byte_ = mem[d / 8];
          if (width == 4) byte_[d % 8 +: 4] = data[3:0];
          else if (width == 2) byte_[d % 8 +: 2] = data[1:0];
          else byte_[d % 8] = data[0];
          mem[d / 8] <= byte_;
        end
      endcase
    end
  endtask

  function [319:0] initval(input integer row);
    case (row)
      'h00: initval = INITVAL_00; 'h01: initval = INITVAL_01; 'h02: initval = INITVAL_02; 'h03: initval = INITVAL_03;
      'h04: initval = INITVAL_04; 'h05: initval = INITVAL_05; 'h06: initval = INITVAL_06; 'h07: initval = INITVAL_07;
      'h08: initval = INITVAL_08; 'h09: initval = INITVAL_09; 'h0A: initval = INITVAL_0A; 'h0B: initval = INITVAL_0B;
      'h0C: initval = INITVAL_0C; 'h0D: initval = INITVAL_0D; 'h0E: initval = INITVAL_0E; 'h0F: initval = INITVAL_0F;
      'h10: initval = INITVAL_10; 'h11: initval = INITVAL_11; 'h12: initval = INITVAL_12; 'h13: initval = INITVAL_13;
      'h14: initval = INITVAL_14; 'h15: initval = INITVAL_15; 'h16: initval = INITVAL_16; 'h17: initval = INITVAL_17;
      'h18: initval = INITVAL_18; 'h19: initval = INITVAL_19; 'h1A: initval = INITVAL_1A; 'h1B: initval = INITVAL_1B;
      'h1C: initval = INITVAL_1C; 'h1D: initval = INITVAL_1D; 'h1E: initval = INITVAL_1E; 'h1F: initval = INITVAL_1F;
      'h20: initval = INITVAL_20; 'h21: initval = INITVAL_21; 'h22: initval = INITVAL_22; 'h23: initval = INITVAL_23;
      'h24: initval = INITVAL_24; 'h25: initval = INITVAL_25; 'h26: initval = INITVAL_26; 'h27: initval = INITVAL_27;
      'h28: initval = INITVAL_28; 'h29: initval = INITVAL_29; 'h2A: initval = INITVAL_2A; 'h2B: initval = INITVAL_2B;
      'h2C: initval = INITVAL_2C; 'h2D: initval = INITVAL_2D; 'h2E: initval = INITVAL_2E; 'h2F: initval = INITVAL_2F;
      'h30: initval = INITVAL_30; 'h31: initval = INITVAL_31; 'h32: initval = INITVAL_32; 'h33: initval = INITVAL_33;
      'h34: initval = INITVAL_34; 'h35: initval = INITVAL_35; 'h36: initval = INITVAL_36; 'h37: initval = INITVAL_37;
      'h38: initval = INITVAL_38; 'h39: initval = INITVAL_39; 'h3A: initval = INITVAL_3A; 'h3B: initval = INITVAL_3B;
      'h3C: initval = INITVAL_3C; 'h3D: initval = INITVAL_3D; 'h3E: initval = INITVAL_3E; default: initval = INITVAL_3F;
    endcase
  endfunction

  reg [35:0] outa, outb, rega, regb, old_a, old_b;
  wire [35:0] data_a = REGMODE_A == "OUTREG" ? rega : outa;
  wire [35:0] data_b = REGMODE_B == "OUTREG" ? regb : outb;
  // x36: port B reads {DOB, DOA}; port A has no read data of its own.
  wire [17:0] doa = DATA_WIDTH_B == 36 ? data_b[17:0] : data_a[17:0];
  wire [17:0] dob = DATA_WIDTH_B == 36 ? data_b[35:18] : data_b[17:0];
  assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
  assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;

  integer i;
  reg [319:0] row;
  initial begin
    if (!(DATA_WIDTH_A == 1 || DATA_WIDTH_A == 2 || DATA_WIDTH_A == 4 || DATA_WIDTH_A == 9 || DATA_WIDTH_A == 18 ||
          DATA_WIDTH_A == 36) || !(DATA_WIDTH_B == 1 || DATA_WIDTH_B == 2 || DATA_WIDTH_B == 4 || DATA_WIDTH_B == 9 ||
          DATA_WIDTH_B == 18 || DATA_WIDTH_B == 36) || ((DATA_WIDTH_A == 36) != (DATA_WIDTH_B == 36)))
      $fatal(1, "DP16KD %m: unsupported DATA_WIDTH_A %0d / DATA_WIDTH_B %0d", DATA_WIDTH_A, DATA_WIDTH_B);
    if ((REGMODE_A != "NOREG" && REGMODE_A != "OUTREG") || (REGMODE_B != "NOREG" && REGMODE_B != "OUTREG"))
      $fatal(1, "DP16KD %m: unsupported REGMODE");
    // INITVAL_xx (Yosys's layout): 16 slots of 20 bits, each two 9-bit bytes and 2 unused bits.
    for (i = 0; i < 2048; i = i + 1) begin
      row = initval(i / 32);
`ifdef LCQ_X_INIT
      mem[i] = 9'bx;
`else
      mem[i] = row[(i % 32) / 2 * 20 + (i % 2) * 9 +: 9];
`endif
    end
`ifdef LCQ_X_INIT
    outa = 36'bx; outb = 36'bx; rega = 36'bx; regb = 36'bx;
`else
    outa = 0; outb = 0; rega = 0; regb = 0;
`endif
  end

  wire rsta_async = RESETMODE == "ASYNC" && RSTA;
  wire rstb_async = RESETMODE == "ASYNC" && RSTB;

  always @(posedge clka or posedge rsta_async) begin
    if (rsta_async) begin
      outa <= 0; rega <= 0;
    end else begin
      if (REGMODE_A == "OUTREG" && OCEA) rega <= RSTA ? 36'b0 : outa;
      if (CEA && sela) begin
        old_a = read_word(DATA_WIDTH_A, ada);
        if (RSTA) outa <= 0;
        else if (DATA_WIDTH_A != 36) begin
          if (!WEA || WRITEMODE_A == "READBEFOREWRITE") outa <= old_a;
          else if (WRITEMODE_A == "WRITETHROUGH") outa <= merge(DATA_WIDTH_A, ada, old_a, write_a);
        end
        if (WEA) write_word(DATA_WIDTH_A, ada, write_a);
      end else if (RSTA) outa <= 0;
    end
  end

  always @(posedge clkb or posedge rstb_async) begin
    if (rstb_async) begin
      outb <= 0; regb <= 0;
    end else begin
      if (REGMODE_B == "OUTREG" && OCEB) regb <= RSTB ? 36'b0 : outb;
      if (CEB && selb) begin
        old_b = read_word(DATA_WIDTH_B, adb);
        if (RSTB) outb <= 0;
        else if (DATA_WIDTH_B == 36 || !WEB || WRITEMODE_B == "READBEFOREWRITE") outb <= old_b;
        else if (WRITEMODE_B == "WRITETHROUGH") outb <= merge(DATA_WIDTH_B, adb, old_b, write_b);
        if (WEB && DATA_WIDTH_B != 36) write_word(DATA_WIDTH_B, adb, write_b);
      end else if (RSTB) outb <= 0;
    end
  end
endmodule

module MULT18X18D(
  input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
  input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
  input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
  input CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0,
  input SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0,
  input SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0,
  output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0,
  output SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0,
  output ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0,
  output ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0,
  output ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0,
  output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
  output P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0,
  output SIGNEDP
);
  parameter REG_INPUTA_CLK = "NONE";
  parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0";
  parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0";
  parameter REG_INPUTB_RST = "RST0";
  parameter REG_INPUTC_CLK = "NONE";
  parameter REG_INPUTC_CE = "CE0";
  parameter REG_INPUTC_RST = "RST0";
  parameter REG_PIPELINE_CLK = "NONE";
  parameter REG_PIPELINE_CE = "CE0";
  parameter REG_PIPELINE_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE";
  parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0";
  parameter CLK0_DIV = "ENABLED";
  parameter CLK1_DIV = "ENABLED";
  parameter CLK2_DIV = "ENABLED";
  parameter CLK3_DIV = "ENABLED";
  parameter HIGHSPEED_CLK = "NONE";
  parameter GSR = "ENABLED";
  parameter CAS_MATCH_REG = "FALSE";
  parameter SOURCEB_MODE = "B_SHIFT";
  parameter MULT_BYPASS = "DISABLED";
  parameter RESETMODE = "SYNC";

  localparam IN_A = REG_INPUTA_CLK == "CLK0", IN_B = REG_INPUTB_CLK == "CLK0", OUT = REG_OUTPUT_CLK == "CLK0";
  initial
    if (!(IN_A || REG_INPUTA_CLK == "NONE") || !(IN_B || REG_INPUTB_CLK == "NONE") ||
        !(OUT || REG_OUTPUT_CLK == "NONE") || REG_PIPELINE_CLK != "NONE" || MULT_BYPASS != "DISABLED" ||
        (IN_A && (REG_INPUTA_CE != "CE0" || REG_INPUTA_RST != "RST0")) ||
        (IN_B && (REG_INPUTB_CE != "CE0" || REG_INPUTB_RST != "RST0")) ||
        (OUT && (REG_OUTPUT_CE != "CE0" || REG_OUTPUT_RST != "RST0")) ||
        ((IN_A || IN_B || OUT) && RESETMODE != "SYNC"))
      $fatal(1, "MULT18X18D %m: only the combinational multiplier and its input and output registers on CLK0, CE0 and RST0 (RESETMODE \"SYNC\") are modelled");

  wire [17:0] a_in = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
  wire [17:0] b_in = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
  reg [17:0] a_reg, b_reg;
  reg [35:0] p_reg;
  initial begin
`ifdef LCQ_X_INIT
    a_reg = 18'bx; b_reg = 18'bx; p_reg = 36'bx;
`else
    a_reg = 0; b_reg = 0; p_reg = 0;
`endif
  end
  wire [17:0] a = IN_A ? a_reg : a_in;
  wire [17:0] b = IN_B ? b_reg : b_in;
  wire [35:0] a_ext = {{18{SIGNEDA & a[17]}}, a};
  wire [35:0] b_ext = {{18{SIGNEDB & b[17]}}, b};
  wire [35:0] product = a_ext * b_ext;
  wire [35:0] p = OUT ? p_reg : product;
  always @(posedge CLK0)
    if (RST0) begin
      a_reg <= 0; b_reg <= 0; p_reg <= 0;
    end else if (CE0) begin
      a_reg <= a_in; b_reg <= b_in; p_reg <= product;
    end
  assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
          P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
  assign SIGNEDP = SIGNEDA | SIGNEDB;
  assign {ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0} = a;
  assign {ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0} = b;
  assign {ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0} =
         {C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0};
  assign {SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0} = a;
  assign {SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0} = b;
endmodule
