// zstdwrite compresses stdin to stdout with klauspost/compress/zstd's streaming
// Encoder, the way container tools do (containers/image, containers/storage
// zstd:chunked, BuildKit and containerd only set WithEncoderLevel), so that
// stowage's exact re-encoder (engine::kpzstd) can be checked against the real
// thing. Built at test time with Debian's golang-go in GOPATH mode
// (GOPATH=/usr/share/gocode); never committed as a binary.
//
//	zstdwrite [-level fastest|default|better|best|N] [-chunk BYTES] [-window BYTES]
//	          [-crc=true|false] [-concurrency N] [-contentsize] [-script OPS] [-bench] < in > out
//
// Without -script all of stdin is written (Write calls of -chunk bytes), then
// Close. A script is a comma-separated list of operations run in order:
//
//	w:N   Write the next N bytes of stdin (in -chunk sized calls); "w" alone: the rest
//	rf:N  ReadFrom (what io.Copy uses) of the next N bytes; "rf" alone: the rest
//	f     Flush
//	c     Close
//	r     Reset(out): a new, independent frame follows
//	rs:N  ResetContentSize(out, N)
//
// -contentsize starts the stream with ResetContentSize(out, len(stdin)). Releases before
// 1.13.2 have no ResetContentSize: build with -tags nocontentsize (contentsize.go), and
// -contentsize and rs:N then fail.
// -bench prints the time from NewWriter to the end (stdin already read, output
// buffered in 1 MiB) to stderr as "zstdwrite: encode-ns N".
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

func main() {
	level := flag.String("level", "default", "fastest, default, better, best, or a zstd level number")
	chunk := flag.Int("chunk", 32*1024, "size of each Write call")
	window := flag.Int("window", 0, "window size (0: library default)")
	crc := flag.Bool("crc", true, "write the content checksum")
	conc := flag.Int("concurrency", 0, "encoder concurrency (0: library default, GOMAXPROCS)")
	contentSize := flag.Bool("contentsize", false, "ResetContentSize with the total input size first")
	script := flag.String("script", "", "operations (see the package doc)")
	bench := flag.Bool("bench", false, "print the encoding wall time (after reading stdin) to stderr")
	flag.Parse()

	var lvl zstd.EncoderLevel
	if n, err := strconv.Atoi(*level); err == nil {
		lvl = zstd.EncoderLevelFromZstd(n)
	} else {
		ok, l := zstd.EncoderLevelFromString(*level)
		if !ok {
			fail(fmt.Errorf("unknown -level %q", *level))
		}
		lvl = l
	}
	opts := []zstd.EOption{zstd.WithEncoderLevel(lvl)}
	if *window > 0 {
		opts = append(opts, zstd.WithWindowSize(*window))
	}
	if !*crc {
		opts = append(opts, zstd.WithEncoderCRC(false))
	}
	if *conc > 0 {
		opts = append(opts, zstd.WithEncoderConcurrency(*conc))
	}

	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	start := time.Now()
	enc, err := zstd.NewWriter(out, opts...)
	if err != nil {
		fail(err)
	}
	if *contentSize {
		resetContentSize(enc, out, int64(len(input)))
	}

	write := func(n int) {
		if n < 0 || n > len(input) {
			n = len(input)
		}
		p := input[:n]
		input = input[n:]
		for len(p) > 0 {
			c := *chunk
			if c <= 0 || c > len(p) {
				c = len(p)
			}
			if _, err := enc.Write(p[:c]); err != nil {
				fail(err)
			}
			p = p[c:]
		}
	}
	readFrom := func(n int) {
		if n < 0 || n > len(input) {
			n = len(input)
		}
		p := input[:n]
		input = input[n:]
		// A reader that hands out at most -chunk bytes per Read, like a pipe.
		r := &chunkReader{r: bytes.NewReader(p), n: *chunk}
		if _, err := enc.ReadFrom(r); err != nil {
			fail(err)
		}
	}

	if *script == "" {
		write(-1)
		if err := enc.Close(); err != nil {
			fail(err)
		}
	} else {
		for _, op := range strings.Split(*script, ",") {
			name, arg, hasArg := strings.Cut(strings.TrimSpace(op), ":")
			n := -1
			if hasArg {
				v, err := strconv.Atoi(arg)
				if err != nil {
					fail(fmt.Errorf("bad op %q", op))
				}
				n = v
			}
			switch name {
			case "w":
				write(n)
			case "rf":
				readFrom(n)
			case "f":
				if err := enc.Flush(); err != nil {
					fail(err)
				}
			case "c":
				// A content size mismatch is an error after the last block; what
				// was written (no checksum) is the output under test.
				if err := enc.Close(); err != nil {
					fmt.Fprintln(os.Stderr, "zstdwrite: close:", err)
				}
			case "r":
				enc.Reset(out)
			case "rs":
				resetContentSize(enc, out, int64(n))
			default:
				fail(fmt.Errorf("unknown op %q", op))
			}
		}
	}
	if *bench {
		fmt.Fprintf(os.Stderr, "zstdwrite: encode-ns %d\n", time.Since(start).Nanoseconds())
	}
	if err := out.Flush(); err != nil {
		fail(err)
	}
}

type chunkReader struct {
	r *bytes.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.n > 0 && len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "zstdwrite:", err)
	os.Exit(2)
}
