//! Host tensors: dtype, shape and contiguous row-major storage.
//!
//! Invariants kept by every constructor:
//! - `data.len() == shape.iter().product() * dtype.size()` (checked arithmetic);
//! - storage is 8-byte aligned, so it can be viewed as any element type with
//!   `bytemuck` without copying.
//!
//! Storage is reference-counted: cloning a tensor is O(1) and shares bytes.
//! Writing needs unique ownership (`data_mut` fails on shared storage).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Element types. The `code` of each is part of the wrapper ABI (`alloc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I8,
    U8,
    I32,
    I64,
    Bool,
    I16,
    U16,
    U32,
    U64,
}

impl DType {
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F64,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Stable numeric code used across the wrapper ABI. Codes are never
    /// renumbered; a new dtype takes the next free code.
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 1,
            DType::F64 => 2,
            DType::I8 => 3,
            DType::U8 => 4,
            DType::I32 => 5,
            DType::I64 => 6,
            DType::Bool => 7,
            DType::I16 => 8,
            DType::U16 => 9,
            DType::U32 => 10,
            DType::U64 => 11,
        }
    }

    pub fn from_code(code: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
        )
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Maximum rank of any tensor (bounded by the wrapper ABI's `alloc`/`view`).
pub const MAX_RANK: usize = 8;

/// Errors building tensors from untrusted sizes or bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error(
        "tensor of shape {shape:?} and dtype {dtype} has more bytes than this host can address"
    )]
    TooLarge { dtype: DType, shape: Vec<usize> },
    #[error("tensor rank {rank} exceeds the maximum of {MAX_RANK}")]
    RankTooLarge { rank: usize },
    #[error("tensor of shape {shape:?} and dtype {dtype} needs {expected} bytes, got {actual}")]
    ByteLength {
        dtype: DType,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("tensor storage is shared and cannot be written")]
    Shared,
    #[error("tensor has dtype {actual}, expected {expected}")]
    DType { expected: DType, actual: DType },
}

/// Dtype and shape of a tensor, without data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorMeta {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorMeta {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorMeta {
            dtype,
            shape: shape.into(),
        }
    }

    /// Number of elements, or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        checked_numel(&self.shape)
    }

    /// Number of bytes, or `None` on overflow.
    pub fn byte_len(&self) -> Option<usize> {
        self.numel()?.checked_mul(self.dtype.size())
    }
}

impl std::fmt::Display for TensorMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// Product of dims with overflow check.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// 8-byte aligned byte storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Bytes {
    words: Vec<u64>,
    len: usize,
}

impl Bytes {
    /// Zero-filled storage of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        Bytes {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = Bytes::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a tensor's bytes live. `External` lets the host back tensors with
/// memory it owns (for example mmapped weight files) without copying.
#[derive(Clone)]
pub enum Storage {
    Owned(Arc<Bytes>),
    External(Arc<dyn AsRef<[u8]> + Send + Sync>),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Owned(b) => write!(f, "Owned({} bytes)", b.len()),
            Storage::External(b) => write!(f, "External({} bytes)", (**b).as_ref().len()),
        }
    }
}

/// A dense, contiguous, row-major tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    meta: TensorMeta,
    storage: Storage,
    /// Byte range of this tensor within `storage`.
    offset: usize,
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor, TensorError> {
        let meta = TensorMeta::new(dtype, shape);
        let len = validated_len(&meta)?;
        Ok(Tensor {
            meta,
            storage: Storage::Owned(Arc::new(Bytes::zeroed(len))),
            offset: 0,
        })
    }

    /// A tensor copied from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, TensorError> {
        let meta = TensorMeta::new(dtype, shape);
        let len = validated_len(&meta)?;
        if len != bytes.len() {
            return Err(TensorError::ByteLength {
                dtype,
                shape: shape.to_vec(),
                expected: len,
                actual: bytes.len(),
            });
        }
        Ok(Tensor {
            meta,
            storage: Storage::Owned(Arc::new(Bytes::from_slice(bytes))),
            offset: 0,
        })
    }

    /// A tensor over `len` bytes of external storage starting at `offset`.
    /// Copies into owned storage when the range is not 8-byte aligned.
    pub fn from_external(
        dtype: DType,
        shape: &[usize],
        storage: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
    ) -> Result<Tensor, TensorError> {
        let meta = TensorMeta::new(dtype, shape);
        let len = validated_len(&meta)?;
        let all = (*storage).as_ref();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= all.len())
            .ok_or_else(|| TensorError::ByteLength {
                dtype,
                shape: shape.to_vec(),
                expected: len,
                actual: all.len().saturating_sub(offset),
            })?;
        let bytes = &all[offset..end];
        if bytes.as_ptr().align_offset(8) != 0 {
            return Tensor::from_bytes(dtype, shape, bytes);
        }
        Ok(Tensor {
            meta,
            storage: Storage::External(storage),
            offset,
        })
    }

    /// A tensor built from typed values.
    pub fn from_vec<T: Element>(shape: &[usize], values: Vec<T>) -> Result<Tensor, TensorError> {
        Tensor::from_bytes(T::DTYPE, shape, bytemuck::cast_slice(&values))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor::from_bytes(T::DTYPE, &[], bytemuck::bytes_of(&value)).expect("scalar byte length")
    }

    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    pub fn dtype(&self) -> DType {
        self.meta.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.meta.shape
    }

    pub fn numel(&self) -> usize {
        // Invariant: validated at construction.
        self.bytes().len() / self.meta.dtype.size()
    }

    pub fn bytes(&self) -> &[u8] {
        let len = self.meta.numel().unwrap_or(0) * self.meta.dtype.size();
        match &self.storage {
            Storage::Owned(b) => &b.as_slice()[self.offset..self.offset + len],
            Storage::External(b) => &(**b).as_ref()[self.offset..self.offset + len],
        }
    }

    /// Mutable bytes; fails if the storage is shared with another tensor or
    /// external.
    pub fn bytes_mut(&mut self) -> Result<&mut [u8], TensorError> {
        let len = self.meta.numel().unwrap_or(0) * self.meta.dtype.size();
        match &mut self.storage {
            Storage::Owned(b) => {
                let b = Arc::get_mut(b).ok_or(TensorError::Shared)?;
                Ok(&mut b.as_mut_slice()[self.offset..self.offset + len])
            }
            Storage::External(_) => Err(TensorError::Shared),
        }
    }

    /// Typed view of the elements.
    pub fn data<T: Element>(&self) -> Result<&[T], TensorError> {
        if self.meta.dtype != T::DTYPE {
            return Err(TensorError::DType {
                expected: T::DTYPE,
                actual: self.meta.dtype,
            });
        }
        Ok(bytemuck::cast_slice(self.bytes()))
    }

    /// Typed mutable view of the elements.
    pub fn data_mut<T: Element>(&mut self) -> Result<&mut [T], TensorError> {
        if self.meta.dtype != T::DTYPE {
            return Err(TensorError::DType {
                expected: T::DTYPE,
                actual: self.meta.dtype,
            });
        }
        Ok(bytemuck::cast_slice_mut(self.bytes_mut()?))
    }

    /// Copies the elements out.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        Ok(self.data::<T>()?.to_vec())
    }

    /// The same storage with another shape of equal element count.
    pub fn reshaped(&self, shape: &[usize]) -> Option<Tensor> {
        let meta = TensorMeta::new(self.meta.dtype, shape);
        if shape.len() > MAX_RANK || meta.numel()? != self.meta.numel()? {
            return None;
        }
        Some(Tensor {
            meta,
            storage: self.storage.clone(),
            offset: self.offset,
        })
    }

    /// Whether two tensors share any storage.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        match (&self.storage, &other.storage) {
            (Storage::Owned(a), Storage::Owned(b)) => Arc::ptr_eq(a, b),
            (Storage::External(a), Storage::External(b)) => {
                std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
            }
            _ => false,
        }
    }

    /// Makes the storage uniquely owned, copying if it is shared.
    pub fn make_unique(&mut self) {
        let unique = match &mut self.storage {
            Storage::Owned(b) => Arc::get_mut(b).is_some(),
            Storage::External(_) => false,
        };
        if !unique || self.offset != 0 {
            let bytes = Bytes::from_slice(self.bytes());
            self.storage = Storage::Owned(Arc::new(bytes));
            self.offset = 0;
        }
    }
}

fn validated_len(meta: &TensorMeta) -> Result<usize, TensorError> {
    if meta.shape.len() > MAX_RANK {
        return Err(TensorError::RankTooLarge {
            rank: meta.shape.len(),
        });
    }
    // Keep every byte length representable as isize so slices are valid.
    meta.byte_len()
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| TensorError::TooLarge {
            dtype: meta.dtype,
            shape: meta.shape.clone(),
        })
}

/// Rust element types that map to a `DType`.
pub trait Element:
    bytemuck::Pod + Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static
{
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
impl Element for i8 {
    const DTYPE: DType = DType::I8;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for i64 {
    const DTYPE: DType = DType::I64;
}
impl Element for i16 {
    const DTYPE: DType = DType::I16;
}
impl Element for u16 {
    const DTYPE: DType = DType::U16;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for u64 {
    const DTYPE: DType = DType::U64;
}

/// Bool tensors store one byte per element, 0 or 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct Bool8(pub u8);

impl Element for Bool8 {
    const DTYPE: DType = DType::Bool;
}
