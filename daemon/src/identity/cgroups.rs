//! cgroup v2 ids to paths. The id the kernel reports is the cgroup directory's inode and also
//! its kernfs file handle, so `open_by_handle_at` on the cgroup2 mount turns an id into a path
//! in one step, without walking the tree.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

/// `FILEID_KERNFS`: the handle type of kernfs (cgroupfs) file handles.
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// The cgroup2 mount and a descriptor on it for handle lookups.
pub struct CgroupFs {
    root: PathBuf,
    root_fd: OwnedFd,
}

impl CgroupFs {
    /// Finds the cgroup2 mount (pure v2 at /sys/fs/cgroup, or hybrid at .../unified).
    pub fn discover() -> std::io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let root = cgroup2_mount(&mountinfo).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 filesystem is mounted")
        })?;
        Self::open(root)
    }

    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        let c = CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: valid NUL-terminated path; the returned fd is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { root, root_fd })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id` relative to the mount ("/" for the root), or None if the
    /// cgroup no longer exists.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: the handle struct matches the kernel's `struct file_handle` with an 8-byte
        // f_handle; the returned fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.root_fd.as_raw_fd(),
                &mut h as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_PATH,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let abs = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = abs.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

/// The mount point of the cgroup2 filesystem in /proc/self/mountinfo.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn own_cgroup_id_resolves_to_own_path() {
        // open_by_handle_at needs CAP_DAC_READ_SEARCH.
        let cg = CgroupFs::discover();
        let missing = crate::testing::root()
            .or_else(|| cg.as_ref().err().map(|e| format!("it needs a cgroup2 filesystem: {e}")));
        if !crate::testing::can_run(missing) {
            return;
        }
        let cg = cg.expect("checked above");
        let own = fs::read_to_string("/proc/self/cgroup").expect("cgroup file");
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).expect("v2 line").to_string();
        let ino = {
            use std::os::unix::fs::MetadataExt as _;
            fs::metadata(cg.root().join(rel.trim_start_matches('/'))).expect("dir").ino()
        };
        let expect = if rel == "/" { "/".to_string() } else { rel };
        assert_eq!(cg.path_of(ino).as_deref(), Some(expect.as_str()));
        assert_eq!(cg.path_of(u64::MAX), None);
    }
}
