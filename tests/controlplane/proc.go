package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// child is one supervised component process: this binary re-executed with
// the component's subcommand.
type child struct {
	name     string
	args     []string
	logPath  string
	started  time.Time
	cmd      *exec.Cmd
	done     chan struct{} // closed once the process has exited
	expected atomic.Bool   // set before a restart stops it: its exit is no failure
}

// supervisor starts components, reports unexpected exits and stops them in
// reverse start order.
type supervisor struct {
	self   string            // path of this executable
	logDir string            // <state-dir>/logs
	failed func(cause error) // called once per unexpected exit
	mu     sync.Mutex        // guards children
	kids   []*child          // in start order
	halt   atomic.Bool       // set while stopping: exits are expected
}

// start launches `<self> <name> args...` with stdout and stderr appended to
// <logDir>/<name>.log.
//
// Children get their own process group, so a terminal's Ctrl-C reaches only
// `up`, which then stops them in order; and Pdeathsig=SIGKILL, so they die
// with `up` even when it is SIGKILLed (e.g. by a panicking test).
func (s *supervisor) start(name string, args ...string) (*child, error) {
	logPath := filepath.Join(s.logDir, name+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child keeps its own descriptor
	fmt.Fprintf(log, "==== %s sluice-controlplane: starting %s %s\n",
		time.Now().Format(time.RFC3339), name, strings.Join(args, " "))

	cmd := exec.Command(s.self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, args: args, logPath: logPath, started: time.Now(), cmd: cmd, done: make(chan struct{})}
	s.mu.Lock()
	s.kids = append(s.kids, c)
	s.mu.Unlock()

	go func() {
		err := cmd.Wait()
		close(c.done)
		if !s.halt.Load() && !c.expected.Load() {
			if err == nil {
				err = fmt.Errorf("exit status 0")
			}
			s.failed(fmt.Errorf("%s exited unexpectedly (%v); see %s", name, err, logPath))
		}
	}()
	return c, nil
}

// stopAll stops every child, last started first: SIGTERM, then SIGKILL after
// grace. Later exits are no longer reported as failures.
func (s *supervisor) stopAll(grace time.Duration) {
	s.halt.Store(true)
	s.mu.Lock()
	kids := append([]*child(nil), s.kids...)
	s.mu.Unlock()
	for i := len(kids) - 1; i >= 0; i-- {
		kids[i].stop(grace)
	}
}

// restart stops c (SIGTERM, then SIGKILL after grace) and starts its component
// again with the same arguments, in c's place in the start order.
func (s *supervisor) restart(c *child, grace time.Duration) (*child, error) {
	c.expected.Store(true)
	c.stop(grace)
	fresh, err := s.start(c.name, c.args...)
	if err != nil {
		return nil, err
	}
	// start appended fresh last; it takes c's place instead.
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kids = s.kids[:len(s.kids)-1]
	for i, k := range s.kids {
		if k == c {
			s.kids[i] = fresh
		}
	}
	return fresh, nil
}

// killAll SIGKILLs every child at once (used on a second interrupt).
func (s *supervisor) killAll() {
	s.halt.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.kids {
		_ = c.cmd.Process.Kill()
	}
}

func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	t0 := time.Now()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		logf("%s stopped in %s", c.name, since(t0))
	case <-time.After(grace):
		logf("%s did not stop within %s, killing it", c.name, grace)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logf prints a progress line to stderr (stdout carries only the READY line).
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sluice-controlplane: "+format+"\n", args...)
}

// since formats the time elapsed since t with millisecond precision.
func since(t time.Time) time.Duration {
	return time.Since(t).Round(time.Millisecond)
}
