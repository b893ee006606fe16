package fakessm

import (
	"fmt"
	"slices"
	"sort"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// activationFilterKeys are the keys DescribeActivations accepts
// (DescribeActivationsFilterKeys in the model).
var activationFilterKeys = []string{"ActivationIds", "DefaultInstanceName", "IamRole"}

// defaultActivationPage is the page size without MaxResults. The model
// documents none; the fake uses 10 so that callers meet pagination.
const defaultActivationPage = 10

// describeActivations lists the activations that are not deleted (expired
// ones included, with Expired true), oldest first. Filters are ANDed, the
// values of one filter ORed; values match exactly.
func (s *Server) describeActivations(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		Filters []struct {
			FilterKey    *string
			FilterValues []string
		}
		MaxResults *int
		NextToken  *string
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	var filters []filter
	for _, f := range in.Filters {
		switch {
		case f.FilterKey == nil || !slices.Contains(activationFilterKeys, *f.FilterKey):
			key := "null"
			if f.FilterKey != nil {
				key = *f.FilterKey
			}
			return nil, badRequest("InvalidFilter", "The filter key %s is not valid. Valid filter keys include: [ActivationIds, DefaultInstanceName, IamRole].", key)
		case len(f.FilterValues) == 0:
			return nil, badRequest("InvalidFilter", "The filter %s has no values.", *f.FilterKey)
		}
		filters = append(filters, filter{*f.FilterKey, f.FilterValues})
	}
	limit := defaultActivationPage
	if in.MaxResults != nil {
		limit = *in.MaxResults
		if limit < 1 || limit > 50 {
			return nil, fakeaws.ValidationError(limit, "maxResults", "Member must have value between 1 and 50")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var matched []*Activation
	for _, a := range s.activations {
		if !a.Deleted && activationMatches(a, filters) {
			matched = append(matched, a)
		}
	}
	sort.Slice(matched, func(i, j int) bool { return activationBefore(matched[i], matched[j]) })
	items, next, perr := page(matched, in.NextToken, limit, func(a *Activation) string { return a.ActivationID },
		func(last string) (func(*Activation) bool, bool) {
			l, ok := s.activations[last]
			return func(a *Activation) bool { return activationBefore(l, a) }, ok
		})
	if perr != nil {
		return nil, perr
	}
	now := s.opts.Clock()
	list := make([]map[string]any, 0, len(items))
	for _, a := range items {
		m := map[string]any{
			"ActivationId":       a.ActivationID,
			"IamRole":            a.IamRole,
			"RegistrationLimit":  a.RegistrationLimit,
			"RegistrationsCount": a.RegistrationsCount,
			"ExpirationDate":     fakeaws.Epoch(a.ExpirationDate),
			"Expired":            !now.Before(a.ExpirationDate),
			"CreatedDate":        fakeaws.Epoch(a.CreatedDate),
			"Tags":               append([]Tag{}, a.Tags...),
		}
		if a.Description != "" {
			m["Description"] = a.Description
		}
		if a.DefaultInstanceName != "" {
			m["DefaultInstanceName"] = a.DefaultInstanceName
		}
		list = append(list, m)
	}
	out := map[string]any{"ActivationList": list}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

func activationBefore(a, b *Activation) bool {
	if !a.CreatedDate.Equal(b.CreatedDate) {
		return a.CreatedDate.Before(b.CreatedDate)
	}
	return a.ActivationID < b.ActivationID
}

func activationMatches(a *Activation, filters []filter) bool {
	for _, f := range filters {
		var field string
		switch f.key {
		case "ActivationIds":
			field = a.ActivationID
		case "DefaultInstanceName":
			field = a.DefaultInstanceName
		case "IamRole":
			field = a.IamRole
		default:
			panic(fmt.Sprintf("fakessm: unchecked activation filter key %q", f.key))
		}
		if !slices.Contains(f.values, field) {
			return false
		}
	}
	return true
}
