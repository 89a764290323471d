//! The floor of a user-space UDP hop, for `bench/proxy.py --gateways`: a relay that does
//! nothing but receive a GRO batch and send it on with GSO, as a mesh gateway does per batch,
//! without the gateway's flow table, tasks or metrics. Its CPU per GB is what any hop through
//! user space costs on this machine at least: two copies and two system calls per batch, and,
//! when its sender pauses between batches, the relay's sleep and wake-up per batch, as a
//! gateway's between a sidecar's batches.
//!
//! ```text
//! udp_relay_floor SIZE GB [PAUSE_US]   # relay GB gigabytes of SIZE-byte datagrams on loopback
//! ```
//! A sender thread sends batches of as many SIZE-byte datagrams as fit one UDP payload to the
//! relay thread, which forwards each to a sink thread; with PAUSE_US, the sender sleeps that
//! long after each batch. Prints `relay_cpu_s_per_gb batches`: the relay thread's CPU seconds
//! per GB it forwarded, and how many batches it moved.

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use murmur_proxy::quinn::udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use murmur_proxy::udp::MAX_UDP_PAYLOAD;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match (args.get(1), args.get(2), args.get(3)) {
        (Some(size), Some(gb), pause) => size
            .parse::<usize>()
            .ok()
            .zip(gb.parse::<f64>().ok())
            .zip(pause.map_or(Some(0), |p| p.parse::<u64>().ok())),
        _ => None,
    };
    let Some(((size, gb), pause)) =
        parsed.filter(|&((size, gb), _)| (1..=MAX_UDP_PAYLOAD).contains(&size) && gb > 0.0)
    else {
        eprintln!(
            "usage: udp_relay_floor SIZE GB [PAUSE_US] (SIZE in 1..=65507 bytes, GB > 0, PAUSE_US microseconds)"
        );
        std::process::exit(2);
    };
    let pause = Duration::from_micros(pause);
    let total = (gb * 1e9) as usize;
    let bind = || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket");
        let state = UdpSocketState::new(UdpSockRef::from(&socket)).expect("socket state");
        // quinn-udp makes it non-blocking; this relay waits in the kernel, as a gateway's
        // thread does in its poller.
        socket.set_nonblocking(false).expect("a blocking socket");
        // As murmur's own sockets (proxy-quic/src/udp.rs): best effort.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        (socket, state)
    };
    let ((relay, state), (sink, _)) = (bind(), bind());
    let relay_addr = relay.local_addr().expect("bound");
    let sink_addr = sink.local_addr().expect("bound");
    let done = Arc::new(AtomicBool::new(false));

    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (socket, state) = bind();
            let per_batch = (MAX_UDP_PAYLOAD / size)
                .min(state.max_gso_segments())
                .max(1);
            let contents = vec![7u8; per_batch * size];
            let transmit = Transmit {
                destination: relay_addr,
                ecn: None,
                contents: &contents,
                segment_size: (per_batch > 1).then_some(size),
                src_ip: None,
            };
            while !done.load(Ordering::Relaxed) {
                let _ = state.send(UdpSockRef::from(&socket), &transmit);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        })
    };
    let sink_thread = std::thread::spawn(move || {
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("a timeout");
        let mut buffer = vec![0u8; 1 << 16];
        while sink.recv(&mut buffer).is_ok() {}
    });

    relay
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    let mut buffer = vec![0u8; 1 << 16];
    let (mut moved, mut batches) = (0usize, 0u64);
    let start = thread_cpu();
    while moved < total {
        let mut meta = [RecvMeta::default()];
        let received = state.recv(
            UdpSockRef::from(&relay),
            &mut [IoSliceMut::new(&mut buffer)],
            &mut meta,
        );
        if let Err(err) = received {
            eprintln!("the relay received nothing for 5 s: {err}");
            std::process::exit(1);
        }
        let len = meta[0].len;
        let stride = meta[0].stride.max(1);
        let transmit = Transmit {
            destination: sink_addr,
            ecn: None,
            contents: &buffer[..len],
            segment_size: (len > stride).then_some(stride),
            src_ip: None,
        };
        if state.send(UdpSockRef::from(&relay), &transmit).is_ok() {
            moved += len;
            batches += 1;
        }
    }
    let cpu = thread_cpu() - start;
    done.store(true, Ordering::Relaxed);
    sender.join().expect("the sender ends");
    sink_thread.join().expect("the sink ends");
    println!("{:.4} {batches}", cpu / (moved as f64 / 1e9));
}

/// CPU seconds this thread has used.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(ok, 0, "CLOCK_THREAD_CPUTIME_ID is readable");
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
