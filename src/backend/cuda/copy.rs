//! Launchers for `kernels/copy.cu`: the narrow_cols copies, fill, the key/value cache's row
//! append and the strided gather behind `contiguous()`. The kernels move elements by size (1, 2,
//! 4 bytes, or 16-byte packs when every row and pointer allows), so one launcher serves every dtype.
//!
//! Launch configuration: blocks of 32 to 256 threads (the row's width rounded up to whole warps);
//! rows on grid.y (at most 65 535, a grid-stride loop beyond), columns on grid.x (at most 64
//! blocks, a grid-stride loop beyond); fill is a 1-D grid-stride loop of at most 1024 blocks of 256.

use super::device::{cuda_err, CudaDevice};
use super::storage::CudaElem;
use crate::backend::Layout;
use crate::error::{shape_err, Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

const MODULE: &str = "copy";
const THREADS: u32 = 256;
const MAX_X_BLOCKS: usize = 64;
const MAX_Y_BLOCKS: usize = 65_535;
/// Dimensions the strided gather takes (after merging and dropping size-1 dimensions).
pub const MAX_DIMS: usize = 6;

/// `rows` rows of `cols` kernel elements: blocks of up to 256 threads, narrower for short rows
/// (whole warps), so that a row of a few packs (a q|k|v split) does not leave most threads idle.
fn cfg_2d(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.next_multiple_of(32).clamp(32, THREADS as usize);
    let x = cols.div_ceil(threads).clamp(1, MAX_X_BLOCKS) as u32;
    let y = rows.clamp(1, MAX_Y_BLOCKS) as u32;
    LaunchConfig { grid_dim: (x, y, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 }
}

/// The entry point `<op>_b<bytes>`.
fn entry(op: &'static str, bytes: usize) -> Result<&'static str> {
    Ok(match (op, bytes) {
        ("copy_2d", 1) => "copy_2d_b1",
        ("copy_2d", 2) => "copy_2d_b2",
        ("copy_2d", 4) => "copy_2d_b4",
        ("copy_2d", 16) => "copy_2d_b16",
        ("place_cols", 1) => "place_cols_b1",
        ("place_cols", 2) => "place_cols_b2",
        ("place_cols", 4) => "place_cols_b4",
        ("place_cols", 16) => "place_cols_b16",
        ("copy_rows", 1) => "copy_rows_b1",
        ("copy_rows", 2) => "copy_rows_b2",
        ("copy_rows", 4) => "copy_rows_b4",
        ("copy_rows", 16) => "copy_rows_b16",
        ("fill", 1) => "fill_b1",
        ("fill", 2) => "fill_b2",
        ("fill", 4) => "fill_b4",
        ("copy_strided", 1) => "copy_strided_b1",
        ("copy_strided", 2) => "copy_strided_b2",
        ("copy_strided", 4) => "copy_strided_b4",
        _ => return Err(Error::Msg(format!("copy (cuda): no {op} kernel for {bytes}-byte elements"))),
    })
}

fn addr<T>(dev: &CudaDevice, v: &impl DevicePtr<T>) -> u64 {
    let (p, _sync) = v.device_ptr(dev.stream());
    p
}

/// 16 / size_of::<T>() when every element count in `counts` is a whole number of 16-byte packs
/// and every address is 16-byte aligned (then the kernels move packs), else 1.
fn pack_of<T>(counts: &[usize], addrs: &[u64]) -> usize {
    let per = 16 / std::mem::size_of::<T>();
    let ok = counts.iter().all(|&c| c % per == 0) && addrs.iter().all(|&a| a % 16 == 0);
    if ok {
        per
    } else {
        1
    }
}

/// Columns start..start + len of x (rows, width) → (rows, len).
pub fn narrow_cols_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    rows: usize,
    width: usize,
    start: usize,
    len: usize,
) -> Result<CudaSlice<T>> {
    const OP: &str = "narrow_cols (cuda)";
    if x.len() != rows * width || start + len > width {
        return shape_err(
            OP,
            format!("columns {start}..{} of {} elements in rows of {width}", start + len, x.len()),
        );
    }
    // SAFETY: the kernel writes every element of the (rows, len) output.
    let mut y = unsafe { dev.alloc_of::<T>(rows * len, OP)? };
    if rows * len == 0 {
        return Ok(y);
    }
    let src = x.slice(start..);
    let k = pack_of::<T>(&[width, start, len], &[addr(dev, &src), addr(dev, &y)]);
    let f = dev.function(MODULE, entry("copy_2d", k * std::mem::size_of::<T>())?)?;
    let (src_ld, dst_ld, r, c) = ((width / k) as i64, (len / k) as i64, rows as i64, (len / k) as i64);
    // SAFETY: copy_2d_<b>(src, src_ld, dst, dst_ld, rows, cols) in units of k elements: row i
    // reads src[i·W + start ..][..len] (inside x, as start + len ≤ W) and writes y[i·len..][..len].
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(&src)
            .arg(&src_ld)
            .arg(&mut y)
            .arg(&dst_ld)
            .arg(&r)
            .arg(&c)
            .launch(cfg_2d(rows, len / k))
    }
    .map_err(cuda_err(OP))?;
    Ok(y)
}

/// dy (rows, len) → dx (rows, width): dy at columns start..start + len, zero elsewhere.
pub fn narrow_cols_bwd<T: CudaElem>(
    dev: &CudaDevice,
    dy: &CudaView<'_, T>,
    rows: usize,
    width: usize,
    start: usize,
    len: usize,
) -> Result<CudaSlice<T>> {
    const OP: &str = "narrow_cols backward (cuda)";
    if dy.len() != rows * len || start + len > width {
        return shape_err(
            OP,
            format!("columns {start}..{} of {width} from {} elements", start + len, dy.len()),
        );
    }
    // SAFETY: the kernel writes every element of the (rows, width) output.
    let mut dx = unsafe { dev.alloc_of::<T>(rows * width, OP)? };
    if rows * width == 0 {
        return Ok(dx);
    }
    let k = pack_of::<T>(&[width, start, len], &[addr(dev, dy), addr(dev, &dx)]);
    let f = dev.function(MODULE, entry("place_cols", k * std::mem::size_of::<T>())?)?;
    let (r, w, s, l) = (rows as i64, (width / k) as i64, (start / k) as i64, (len / k) as i64);
    // SAFETY: place_cols_<b>(src, dst, rows, width, start, len) in units of k elements: reads
    // dy[i·len ..][..len], writes all of dx[i·width..][..width].
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(dy)
            .arg(&mut dx)
            .arg(&r)
            .arg(&w)
            .arg(&s)
            .arg(&l)
            .launch(cfg_2d(rows, width / k))
    }
    .map_err(cuda_err(OP))?;
    Ok(dx)
}

/// Every element of `dst` = `value`.
pub fn fill<T: CudaElem>(dev: &CudaDevice, dst: &mut CudaViewMut<'_, T>, value: T) -> Result<()> {
    const OP: &str = "fill (cuda)";
    let n = dst.len();
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(MODULE, entry("fill", std::mem::size_of::<T>())?)?;
    let n64 = n as i64;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).clamp(1, 1024) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: fill_<b>(dst, value, n) with a value of the element's size; n elements of dst.
    unsafe { dev.stream().launch_builder(&f).arg(dst).arg(&value).arg(&n64).launch(cfg) }
        .map_err(cuda_err(OP))?;
    Ok(())
}

/// Row `idx[i]` of dst (rows of `width`) = row i of src (n, width); the indices must have been
/// checked below dst's row count (the kernel skips any that are not).
pub fn copy_rows<T: CudaElem>(
    dev: &CudaDevice,
    dst: &mut CudaViewMut<'_, T>,
    idx: &CudaView<'_, u32>,
    src: &CudaView<'_, T>,
    width: usize,
) -> Result<()> {
    const OP: &str = "copy_rows (cuda)";
    let n = idx.len();
    if width == 0 || dst.len() % width != 0 || src.len() != n * width {
        return shape_err(OP, format!("{n} rows of {width} from {} into {} elements", src.len(), dst.len()));
    }
    if n == 0 {
        return Ok(());
    }
    let total = dst.len() / width;
    let k = pack_of::<T>(&[width], &[addr(dev, src), addr(dev, dst)]);
    let f = dev.function(MODULE, entry("copy_rows", k * std::mem::size_of::<T>())?)?;
    let (n64, w, t) = (n as i64, (width / k) as i64, total as i64);
    // SAFETY: copy_rows_<b>(idx, src, dst, n, width, total) in units of k elements: reads n
    // indices and n rows of src, writes rows below `total` of dst.
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(idx)
            .arg(src)
            .arg(dst)
            .arg(&n64)
            .arg(&w)
            .arg(&t)
            .launch(cfg_2d(n, width / k))
    }
    .map_err(cuda_err(OP))?;
    Ok(())
}

/// The layout's dimensions and strides with size-1 dimensions dropped and dimensions that are
/// contiguous with the next merged, front-padded to `MAX_DIMS` (size 1, stride 0); None when more
/// than `MAX_DIMS` remain.
pub fn collapse(dims: &[usize], strides: &[usize]) -> Option<([usize; MAX_DIMS], [usize; MAX_DIMS])> {
    let mut d: Vec<(usize, usize)> = Vec::new();
    for (&n, &s) in dims.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match d.last_mut() {
            // The previous dimension steps exactly over this one: one dimension of both.
            Some(last) if last.1 == s * n => *last = (last.0 * n, s),
            _ => d.push((n, s)),
        }
    }
    if d.len() > MAX_DIMS {
        return None;
    }
    let (mut od, mut os) = ([1usize; MAX_DIMS], [0usize; MAX_DIMS]);
    let pad = MAX_DIMS - d.len();
    for (i, (n, s)) in d.into_iter().enumerate() {
        od[pad + i] = n;
        os[pad + i] = s;
    }
    Some((od, os))
}

/// A dense row-major copy of the elements `layout` selects from `src` (the whole storage), which
/// the caller has checked to lie inside it.
pub fn copy_strided<T: CudaElem>(
    dev: &CudaDevice,
    src: &CudaView<'_, T>,
    layout: &Layout,
) -> Result<CudaSlice<T>> {
    const OP: &str = "strided copy (cuda)";
    let n = layout.shape().numel();
    // SAFETY: the kernel writes every one of the n elements.
    let mut out = unsafe { dev.alloc_of::<T>(n, OP)? };
    if n == 0 {
        return Ok(out);
    }
    let Some((d, s)) = collapse(layout.shape().dims(), layout.strides()) else {
        return Err(Error::Unsupported {
            op: "strided copy of a view with more than 6 non-mergeable dimensions",
            device: dev.device().to_string(),
        });
    };
    let base = src.slice(layout.offset()..);
    let f = dev.function(MODULE, entry("copy_strided", std::mem::size_of::<T>())?)?;
    let rows = n / d[5];
    let l = |x: usize| x as i64;
    let (r, d1, d2, d3, d4, d5) = (l(rows), l(d[1]), l(d[2]), l(d[3]), l(d[4]), l(d[5]));
    let (s0, s1, s2, s3, s4, s5) = (l(s[0]), l(s[1]), l(s[2]), l(s[3]), l(s[4]), l(s[5]));
    // SAFETY: copy_strided_<b>(src, dst, rows, d1..d5, s0..s5): writes the n = rows·d5 elements
    // of out; reads base[Σ i_k·s_k] with i_k < d_k, the layout's elements, inside src.
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(&base)
            .arg(&mut out)
            .arg(&r)
            .arg(&d1)
            .arg(&d2)
            .arg(&d3)
            .arg(&d4)
            .arg(&d5)
            .arg(&s0)
            .arg(&s1)
            .arg(&s2)
            .arg(&s3)
            .arg(&s4)
            .arg(&s5)
            .launch(cfg_2d(rows, d[5]))
    }
    .map_err(cuda_err(OP))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::collapse;

    #[test]
    fn collapse_merges_contiguous_and_drops_unit_dims() {
        // A contiguous (2, 3, 4) is one run of 24.
        assert_eq!(collapse(&[2, 3, 4], &[12, 4, 1]), Some(([1, 1, 1, 1, 1, 24], [0, 0, 0, 0, 0, 1])));
        // The transpose of a (3, 4) matrix: (4, 3) with strides (1, 4) merges nothing.
        assert_eq!(collapse(&[4, 3], &[1, 4]), Some(([1, 1, 1, 1, 4, 3], [0, 0, 0, 0, 1, 4])));
        // Size-1 dimensions vanish; a column block of a (5, 8) matrix keeps its row stride.
        assert_eq!(collapse(&[5, 1, 3], &[8, 99, 1]), Some(([1, 1, 1, 1, 5, 3], [0, 0, 0, 0, 8, 1])));
        // Seven dimensions that cannot merge.
        let dims = [2usize; 7];
        let strides = [1usize, 3, 9, 27, 81, 243, 729];
        assert_eq!(collapse(&dims, &strides), None);
    }
}
