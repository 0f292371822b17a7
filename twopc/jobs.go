package twopc

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// PutJob creates or updates a job (idempotent).
func (c *Coordinator) PutJob(ctx context.Context, spec JobSpec) (JobInfo, error) {
	if err := CheckName("job", spec.Name); err != nil {
		return JobInfo{}, err
	}
	if spec.Commit == "" {
		spec.Commit = ModeAuto
	}
	if !spec.Commit.Valid() {
		return JobInfo{}, fmt.Errorf("%w: commit mode %q: want %q or %q", ErrInvalid, spec.Commit, ModeAuto, ModeExternal)
	}
	spec.Guarantee = spec.Guarantee.Norm()
	if !spec.Guarantee.Valid() {
		return JobInfo{}, fmt.Errorf("%w: guarantee %q: want %q, %q or %q", ErrInvalid, spec.Guarantee,
			GuaranteeExactlyOnce, GuaranteeAtLeastOnce, GuaranteeNone)
	}
	// External commit decides a whole job's checkpoint n at once, which
	// only means something when the sinks hold it prepared; a direct job's
	// records are already committed (or sent) when the checkpoint is taken.
	if spec.Guarantee.Direct() && spec.Commit != ModeAuto {
		return JobInfo{}, fmt.Errorf("%w: guarantee %s needs commit mode %s (external commit decides prepared transactions; a %s job has none)",
			ErrInvalid, spec.Guarantee, ModeAuto, spec.Guarantee)
	}
	if cur, ok := c.m.JobSpec(spec.Name); ok && cur.Guarantee != spec.Guarantee {
		return JobInfo{}, fmt.Errorf("%w: job %s has guarantee %s; cannot change it to %s (delete the job and create it again)",
			ErrModeConflict, spec.Name, cur.Guarantee, spec.Guarantee)
	}
	if len(spec.Sinks) == 0 {
		spec.Sinks = sortedKeys(c.cfg.Sinks)
	}
	seen := map[string]bool{}
	for _, s := range spec.Sinks {
		if c.cfg.Sinks[s] == nil {
			return JobInfo{}, fmt.Errorf("%w: %q (configured: %v)", ErrUnknownSink, s, sortedKeys(c.cfg.Sinks))
		}
		if seen[s] {
			return JobInfo{}, fmt.Errorf("%w: sink %q listed twice", ErrInvalid, s)
		}
		seen[s] = true
		if _, ok := c.cfg.Sinks[s].(DirectSink); spec.Guarantee.Direct() && !ok {
			return JobInfo{}, fmt.Errorf("%w: sink %q cannot serve guarantee %s", ErrInvalid, s, spec.Guarantee)
		}
	}
	slices.Sort(spec.Sinks)
	// A live writer keeps the mode it opened with in mind (it commits by
	// itself or waits for the commit call): switching under it would leave
	// its checkpoints undecided or decided behind its back. The journal
	// refuses the switch while checkpoints are unresolved; open sessions
	// are known only here.
	if cur, ok := c.m.JobSpec(spec.Name); ok && cur.Commit != spec.Commit {
		c.modeMu.Lock()
		defer c.modeMu.Unlock()
		if ws := c.openWriters(spec.Name); len(ws) > 0 {
			return JobInfo{}, fmt.Errorf("%w: job %s has open sessions (writers %s); cannot change commit mode from %s to %s while they run",
				ErrModeConflict, spec.Name, strings.Join(ws, ", "), cur.Commit, spec.Commit)
		}
	}
	if _, err := c.propose(ctx, Command{Op: OpPutJob, Spec: &spec}); err != nil {
		return JobInfo{}, err
	}
	return c.Job(spec.Name)
}

// openWriters lists the writers of a job with a session open on this node.
// A fenced session is removed from c.sessions when its successor opens, so
// every session still there is open (until Close).
func (c *Coordinator) openWriters(job string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ws []string
	for k := range c.sessions {
		if k.job == job {
			ws = append(ws, k.writer)
		}
	}
	slices.Sort(ws)
	return ws
}

// Jobs lists every job.
func (c *Coordinator) Jobs() []JobInfo {
	out := []JobInfo{}
	for _, n := range c.m.JobNames() {
		if j, ok := c.m.JobInfo(n); ok {
			out = append(out, j)
		}
	}
	return out
}

// Job describes one job.
func (c *Coordinator) Job(name string) (JobInfo, error) {
	j, ok := c.m.JobInfo(name)
	if !ok {
		return JobInfo{}, fmt.Errorf("%w: %s", ErrJobNotFound, name)
	}
	return j, nil
}

// Checkpoints lists a job's unresolved and recent checkpoints.
func (c *Coordinator) Checkpoints(job string) ([]CheckpointInfo, error) {
	cps, ok := c.m.Checkpoints(job, c.now())
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrJobNotFound, job)
	}
	return cps, nil
}
