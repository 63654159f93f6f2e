// embed_rows: the embeddings of a chunk of token ids, gathered on the GPU from the table in its
// stored format (so a decode step can take the token the previous step sampled without a trip
// through the host).
//
// Composed after a weight-format file (wfmt_*.wgsl) providing `w` and `fmt_load8(row, col)`.
// Dispatch: (ceil(cols / 8 / 64), n_tok) workgroups of 64 threads, once per row shard of the
// table. Thread i of workgroup (g, t) writes values 8 (64 g + i) .. + 8 of token t's row, when the
// token's id falls in this shard (rows row0 .. row0 + rows); other shards' dispatches skip it.
// Layout (linear_params.wgsl's fields): ids [..] u32, token t at x_off + t; out [n_tok][y_stride]
// f32; cols = the hidden size; w_stride = the table's row stride in its format's units.

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// fmt_block_dot (the matvec path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return 0.0; }

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let o = wg.x * 64u + li;
    let t = wg.y;
    let col = 8u * o;
    if (col >= p.cols || t >= p.n_tok) { return; }
    let id = ids[p.x_off + t];
    if (id < p.row0 || id - p.row0 >= p.rows) { return; }
    let v = fmt_load8(id - p.row0, col);
    let vals = array<f32, 8>(v.lo.x, v.lo.y, v.lo.z, v.lo.w, v.hi.x, v.hi.y, v.hi.z, v.hi.w);
    let base = t * p.y_stride + col;
    for (var j = 0u; j < 8u; j++) {
        // rows of 16-bit tables are padded to 8 values: never write past the hidden size
        if (col + j < p.cols) { out[base + j] = vals[j]; }
    }
}
