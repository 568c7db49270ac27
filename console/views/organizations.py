"""Pages of any organisation: overview, members, a reseller's tenants, billing, audit log."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from billing.periods import Period
from billing.selectors import usage as usage_reads
from console.forms import InvitationForm, LimitsForm, OrganizationForm
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, paginate, render_page, sold_access
from console.views.invitations import accept_link
from portal import selectors, services
from portal.access import Access, Need, get_access, membership_for_manager, require_operator
from portal.models import ApiKey, Invitation, Membership, Organization
from portal.models.limits import LIMIT_NAMES


@login_required
def overview(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """What the organisation is and what to do next, by role."""
    access = get_access(request.user, slug, need=Need.VIEW)
    organization = access.organization
    context: dict[str, object] = {"organization": organization}
    if organization.is_tenant and access.can(Need.USAGE):
        period = Period.last_days(30)
        events = usage_reads.in_period(usage_reads.usage_events_for(access), period)
        context["totals"] = usage_reads.usage_totals(events)
    if organization.is_tenant and access.can(Need.KEYS):
        context["active_keys"] = (
            selectors.api_keys_for(access).filter(status=ApiKey.Status.ACTIVE).count()
        )
    if not organization.is_tenant and access.can(Need.MANAGE):
        context["tenant_count"] = usage_reads.tenants_of(organization).count()
    return render_page(request, "portal/overview.html", context, access=access, section="overview")


def members_page(
    request: AuthenticatedHttpRequest,
    access: Access,
    *,
    invite_form: InvitationForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The members page: members, pending invitations, and the invitation form for managers."""
    can_manage = access.can(Need.MANAGE)
    roles = access.assignable_roles()
    if can_manage:
        invite_form = invite_form or InvitationForm(roles=roles)
    return render_page(
        request,
        "portal/members.html",
        {
            "invite_form": invite_form,
            "members": selectors.members_of(access.organization),
            "invitations": selectors.invitations_pending(access.organization) if can_manage else [],
            "role_choices": [
                (value, label) for value, label in Membership.Role.choices if value in roles
            ],
            "can_touch_owners": access.can(Need.OWNER),
        },
        access=access,
        section="members",
        status=status,
    )


def _refuse_roles_above(access: Access, requested: str) -> None:
    if requested in Membership.Role.values and requested not in access.assignable_roles():
        # Asking for a role above one's own is refused outright, not shown as a typo.
        raise PermissionDenied(f"Your role cannot grant the {requested} role.")


@login_required
def members(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Everyone with a role here. A POST invites, as the invitation form does: people are
    added only by invitation, so no answer says whether an address already has a login
    (the old "add someone who already signs in" form told existing logins from others)."""
    access = get_access(request.user, slug, need=Need.MEMBERS)
    if request.method != "POST":
        return members_page(request, access)
    return invite(request, slug)


@login_required
@require_POST
def invite(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Send an invitation; the answer is the same whether the address has a login or not."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    _refuse_roles_above(access, request.POST.get("role", ""))
    form = InvitationForm(request.POST, roles=access.assignable_roles())
    if form.is_valid():
        with form_errors(form) as failed:
            invitation = services.invitation_create(
                organization=access.organization,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                actor=request.user,
                link=accept_link,
            )
        if not failed:
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("members", slug=slug)
    return members_page(request, access, invite_form=form, status=400)


@login_required
@require_POST
def invitation_revoke(
    request: AuthenticatedHttpRequest, slug: str, invitation_id: int
) -> HttpResponseRedirect:
    access = get_access(request.user, slug, need=Need.MANAGE)
    invitation = get_object_or_404(Invitation, pk=invitation_id, organization=access.organization)
    services.invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"The invitation to {invitation.email} is revoked.")
    return redirect("members", slug=slug)


@login_required
@require_POST
def member_role(
    request: AuthenticatedHttpRequest, slug: str, membership_id: int
) -> HttpResponseRedirect:
    """Change a member's role, within what the manager's own role may grant."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    membership = membership_for_manager(access, membership_id)
    role = request.POST.get("role", "")
    if role not in access.assignable_roles():
        raise PermissionDenied(f"Your role cannot grant the {role or 'empty'} role.")
    try:
        services.membership_change_role(membership=membership, role=role, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            f"{membership.user.get_username()} is now {membership.get_role_display().lower()}.",
        )
    return redirect("members", slug=slug)


@login_required
@require_POST
def member_remove(
    request: AuthenticatedHttpRequest, slug: str, membership_id: int
) -> HttpResponseRedirect:
    access = get_access(request.user, slug, need=Need.MANAGE)
    membership = membership_for_manager(access, membership_id)
    try:
        services.membership_remove(membership=membership, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            f"{membership.user.get_username()} no longer has a role in {access.organization.name}.",
        )
    return redirect("members", slug=slug)


@login_required
def tenants(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A reseller's (or the platform's) tenants, and a form to add one."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    parent = access.organization
    if parent.is_tenant:
        raise PermissionDenied("Tenants have no tenants of their own.")
    if parent.kind == Organization.Kind.PLATFORM:
        require_operator(request.user)
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            tenant, invitation = services.organization_create_with_owner(
                name=form.cleaned_data["name"],
                slug=form.cleaned_data["slug"] or None,
                kind=Organization.Kind.TENANT,
                parent=parent,
                owner_email=form.cleaned_data["owner_email"],
                actor=request.user,
                link=accept_link,
            )
        if not failed:
            if invitation is not None:
                messages.success(
                    request,
                    f"Tenant “{tenant.name}” created; invitation sent to {invitation.email}.",
                )
            else:
                messages.success(
                    request, f"Tenant “{tenant.name}” created. Invite its first owner below."
                )
            return redirect("members", slug=tenant.slug)
    return render_page(
        request,
        "portal/tenants.html",
        {"form": form, "page": paginate(request, usage_reads.tenants_of(parent))},
        access=access,
        section="tenants",
        status=400 if form.errors else 200,
    )


@login_required
def limits(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A tenant's limits as its seller sets them, beneath the operator's caps."""
    access = sold_access(request, slug, tenant_only=True)
    tenant = access.organization
    initial = {name: getattr(tenant, f"seller_{name}") for name in LIMIT_NAMES}
    form = LimitsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            services.tenant_limits_set(tenant=tenant, limits=form.limits(), actor=request.user)
        if not failed:
            messages.success(request, f"Limits of {tenant.name} saved.")
            return redirect("tenant_limits", slug=slug)
    rows = [
        {
            "label": LimitsForm.base_fields[name].label,
            "cap": getattr(tenant, name),
            "seller": initial[name],
            "enforced": tenant.enforced_limit(name),
        }
        for name in LIMIT_NAMES
    ]
    return render_page(
        request,
        "portal/limits.html",
        {"form": form, "rows": rows, "seller": tenant.parent},
        access=access,
        section="limits",
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def tenant_status(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Deactivate or reactivate a tenant, as its seller."""
    access = sold_access(request, slug, tenant_only=True)
    tenant = access.organization
    action = request.POST.get("action")
    if action not in ("deactivate", "reactivate"):
        messages.error(request, "Choose to deactivate or to reactivate.")
        return redirect("tenant_limits", slug=slug)
    try:
        services.tenant_set_active(tenant=tenant, active=action == "reactivate", actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("tenant_limits", slug=slug)
    if tenant.is_active:
        messages.success(request, f"{tenant.name} is active: its keys work again.")
    else:
        messages.success(request, f"{tenant.name} is deactivated: its keys are refused.")
    return redirect("tenant_limits", slug=slug)


@login_required
def audit(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    access = get_access(request.user, slug, need=Need.AUDIT)
    return render_page(
        request,
        "portal/audit.html",
        {"page": paginate(request, selectors.audit_entries_for(access))},
        access=access,
        section="audit",
    )
